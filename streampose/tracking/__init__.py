"""Multi-person tracking: Kalman box filters (kalman), matching (association), the life
of tracks (track), and the ByteTrack and OC-SORT association schemes (bytetrack, ocsort)."""

"""The daemon's web page: live annotated video of each stream and the event feed (app.py)."""

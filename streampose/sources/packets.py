"""The compressed packets of one opening of a video input, carried to the frames that enter the graph.

A recorder that copies the camera's video (`encode: copy`) needs every packet, also those of the
frames dropped at the entrance (runtime/admission.py), which are never converted or queued. The
source keeps the packets it demuxes in a `PacketCarry` and hands them, all at once, to the next
frame that enters (`Frame.packets`). Only streams that reach a copying recorder keep them.

The carry is bounded: a live stream whose frames are all dropped for long would otherwise grow it
without end. Beyond CARRY_PACKETS it sheds its oldest packets up to the next keyframe (a GOP is
shed whole, so what is kept still decodes), each counted in `packets_dropped`; the recorder sees
the missing numbers as a gap and resumes at the next keyframe.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import av

from streampose.frame import PacketSource, Packets

# 12 s at 25 fps: ~4 MB of 1280x720 H.264 at 3 Mbit/s. A stream thinned to its slowest rate
# (admission.MIN_RATE, one frame in 50) carries 50 packets from one frame to the next.
CARRY_PACKETS = 300


def packet_source(stream: av.video.stream.VideoStream) -> PacketSource:
    """The PacketSource of an opened input's video `stream`: its codec parameters copied into a
    null muxer's stream (which no write ever opens), so that they outlive the input."""
    holder = av.open(io.BytesIO(), "w", format="null")
    template = holder.add_stream_from_template(stream, opaque=True)
    rate = stream.average_rate or stream.guessed_rate
    frame_step = round(1 / (rate * stream.time_base)) if rate and stream.time_base else 0
    codec = stream.codec_context
    return PacketSource(template, frame_step, f"{codec.name} {codec.width}x{codec.height}")


class PacketCarry:
    """The packets demuxed since the last `take`, at most CARRY_PACKETS.

    on_shed(n): called with the number of packets shed to keep the bound.
    """

    def __init__(self, source: PacketSource, on_shed: Callable[[int], None]):
        self.source = source
        self._packets: list[av.Packet] = []
        self._first = 0  # the number of _packets[0] in the opening's demuxing order
        self._to_keyframe = False  # a shed left nothing: packets are shed up to the next keyframe
        self._on_shed = on_shed

    def add(self, packet: av.Packet) -> None:
        """Keep a demuxed packet (the empty packet that flushes the decoder is not one)."""
        if self._to_keyframe and not packet.is_keyframe:
            self._first += 1
            self._on_shed(1)
            return
        self._to_keyframe = False
        self._packets.append(packet)
        if len(self._packets) > CARRY_PACKETS:
            self._shed()

    def _shed(self) -> None:
        """Drop the oldest GOP: up to the next keyframe after the first packet, or everything."""
        keyframe = next((i for i, p in enumerate(self._packets) if i > 0 and p.is_keyframe), len(self._packets))
        del self._packets[:keyframe]
        self._first += keyframe
        self._to_keyframe = not self._packets
        self._on_shed(keyframe)

    def take(self) -> Packets:
        """The packets kept since the last take, for the frame that enters now."""
        packets = Packets(self.source, self._first, tuple(self._packets))
        self._first += len(self._packets)
        self._packets = []
        return packets

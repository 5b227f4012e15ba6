from typing import Any, Iterable, Optional, Union

from picows import WSFrame

class FrameReader:
    """A connection's data frames made into messages (see frames.pyx)."""

    in_progress: int
    buffered: int
    allocated: int
    inflating: bool
    def __init__(self, limit: int, deflate: bool = False) -> None: ...
    def feed(self, frame: WSFrame) -> Union[str, bytes, None, tuple[int, str]]: ...

def frame_for_send(payload: dict[str, Any], window_bits: int = 0, min_size: int = 0) -> bytes: ...
def close_for(payload: Optional[dict[str, Any]]) -> tuple[int, bytes]: ...
def utf8_valid_in_pieces(pieces: Iterable[bytes]) -> bool: ...

from typing import Any, Optional, Union

from .pid import Pid

NOPROC: str

async def call(dest: Union[Pid, str], topic: str, payload: Any = None, timeout: Optional[float] = 5.0) -> Any: ...

"""Token geometry of one attention call: a (frames, height, width) latent grid plus text."""

from __future__ import annotations

from dataclasses import dataclass

from dit_sparse.kernels import TokenOrder
from dit_sparse.kernels.reorder import TEXT_POSITIONS


@dataclass(frozen=True)
class TokenGrid:
    """Latent tokens in raster order (frames slowest, then rows, then columns), with
    `text_len` text tokens before ("prefix") or after ("suffix") them in the same sequence."""

    frames: int
    height: int
    width: int
    text_len: int = 0
    text_position: str = "none"

    def __post_init__(self):
        for name in ("frames", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenGrid.{name} must be a positive int, got {value!r}")
        if self.text_position not in TEXT_POSITIONS:
            raise ValueError(f"TokenGrid.text_position must be one of {TEXT_POSITIONS}, got {self.text_position!r}")
        if not isinstance(self.text_len, int) or self.text_len < 0:
            raise ValueError(f"TokenGrid.text_len must be an int >= 0, got {self.text_len!r}")
        if self.text_len > 0 and self.text_position == "none":
            raise ValueError(f"TokenGrid.text_len={self.text_len} needs text_position 'prefix' or 'suffix'")

    @property
    def positions(self) -> int:
        return self.height * self.width

    @property
    def num_video_tokens(self) -> int:
        return self.frames * self.positions

    @property
    def num_tokens(self) -> int:
        return self.num_video_tokens + self.text_len

    @property
    def order(self) -> TokenOrder:
        """The two layouts the head kinds live in. Video: frame-major (native) and
        position-major. Images (one frame): row-major (native) and column-major."""
        if self.frames == 1:
            return TokenOrder(self.height, self.width, self.text_len, self.text_position)
        return TokenOrder(self.frames, self.positions, self.text_len, self.text_position)

# An extract of olmix/aliases.py (allenai/olmix, Apache-2.0; its commit in tests/assets/olmix/COMMIT): the source
# configs the swarm's generator takes (tests/assets/olmix/olmix/generate/synthesize_mixture_dirichlet.py), lines 84-120
# copied unchanged, with the import they use (line 8, `BaseModel` alone). The rest (olmo_core's dtypes, the launch,
# training and fit configs) is left out.
from pydantic import BaseModel


class QualityConfig(BaseModel):
    """Configuration for a quality level within a topic or source.

    Name can be any string like "vigintile_0001", "high", "medium", "low", etc.
    """

    name: str  # e.g., "vigintile_0001", "high", "low"
    paths: list[str]
    weight: float | None = None  # Optional weight for quality bucket (used in upsampling experiments)


class TopicConfig(BaseModel):
    name: str
    paths: list[str] | None = None
    quality: list[QualityConfig] | None = None
    weight: float | None = None

    def model_post_init(self, __context) -> None:
        """Validate that exactly one of paths or quality is provided."""
        if self.paths is not None and self.quality is not None:
            raise ValueError("TopicConfig cannot have both 'paths' and 'quality' - use exactly one")
        if self.paths is None and self.quality is None:
            raise ValueError("TopicConfig must have either 'paths' or 'quality'")


class SourceConfig(BaseModel):
    name: str
    paths: list[str] | None = None
    topics: list[TopicConfig] | None = None
    quality: list[QualityConfig] | None = None
    weight: float | None = None

    def model_post_init(self, __context) -> None:
        """Validate that exactly one of paths, topics, or quality is provided."""
        options = [self.paths is not None, self.topics is not None, self.quality is not None]
        if sum(options) != 1:
            raise ValueError("SourceConfig must have exactly one of 'paths', 'topics', or 'quality'")

"""The sources' public names, for users' own modules: the registry (`registry`: `Source`, `SOURCES`,
`PREFERENCE_SOURCES`, `VERIFIABLE_SOURCES`, `get_source`) and loading a source (`load`: `load_conversations`, `open_row_read`). The
package's own modules import them from there."""

from instructjax.data.sources.load import load_conversations, open_row_read
from instructjax.data.sources.registry import (
    FLAN_V2_SUBMIXES,
    POOL_OPTIONS,
    PREFERENCE_SOURCES,
    SOURCES,
    VERIFIABLE_SOURCES,
    Source,
    get_source,
)

__all__ = ["FLAN_V2_SUBMIXES", "POOL_OPTIONS", "PREFERENCE_SOURCES", "SOURCES", "VERIFIABLE_SOURCES", "Source", "get_source",
           "load_conversations", "open_row_read"]

"""`rows.Share` as the hosts of a run give it, in one process: the items cut into pieces by position, the
pieces made last to first and pickled (as a host writes them), then read back in order."""

import pickle


def reverse_pickled_share(spans: int):
    """A `Share` that cuts the items into `spans` pieces."""

    def share(fn, items):
        bounds = sorted({len(items) * i // spans for i in range(spans + 1)})
        pieces = list(zip(bounds, bounds[1:], strict=False))
        made = {piece: pickle.dumps(fn(items[piece[0] : piece[1]])) for piece in reversed(pieces)}
        return [result for piece in pieces for result in pickle.loads(made[piece])]

    return share

"""Learning a router's classifier from a policy's own labelled requests, and judging it.

``labels`` reads the labelled file (one request and the cheapest tier good enough for it per
line); ``policy`` is what training and evaluation read of a RoutingPolicy (its tiers, their
costs, its overrides, its heuristic); ``figures`` computes quality, cost, the threshold sweep
and APGR from routed tiers and probabilities; ``router_train`` fits a classifier
(scikit-learn, the ``learn`` extra) and writes the artifact ``specfleet.routing.learned``
loads; ``split`` holds a stable share of labelled requests out of training, for evaluation;
``router_eval`` sets a classifier beside the heuristic on labelled requests, and gives the
figures ``promotion`` decides by (whether a trained classifier replaces the one in force, on
held-out labels, as a decision that replays); ``labelstore`` keeps
labelled requests in the policy's capture store; ``judge`` is the judge model's prompt, the
parser of its verdicts and the rule that makes them a label, and ``labelling`` asks the tiers
and the judge (the openai SDK, in the ``learn`` extra) for captured requests' labels;
``router_learn`` is one pass of the loop over a policy's store (judge what is unread, train,
decide, record), keeping its state under the names ``specfleet.api.storelayout`` gives.

Pure but for ``router_train``'s fitting, which is deterministic, ``labelstore``'s and
``router_learn``'s reads and writes through a ``specfleet.capturestore`` store, and
``labelling``'s calls to servers; no clock (the caller gives the time, and ``labelling`` its
clock and sleep).
Called by ``specfleet router`` (``specfleet.cli``).
"""


class LearnError(ValueError):
    """Labels, a policy or options that training or evaluation cannot use; the message says
    what to change. ``labels.LabelError``, ``router_train.TrainingError``,
    ``router_eval.EvaluationError`` and ``promotion.PromotionError`` are its kinds."""

"""Region features: the CNN's vectors of each image and its regions (``extract``), the candidate boxes
(``proposals``) and the feature shards' format (``format``)."""

PROPOSAL_METHODS = ("grid", "selective-search")  # named here, where a config's choices need no OpenCV

"""Token ids reserved in every vocabulary, shared by the models and the data rows. Imports nothing: Ray Data's
read workers import the row code afresh every epoch, and must not pay for torch to learn two integers."""

PAD, UNK = 0, 1

# Words a caption or a region phrase cannot end on: articles, prepositions, conjunctions, possessives, auxiliaries
# ("a man in a", "a dog and a"). Decoding never ends a caption on one; region snippets are cut before them.
CONTINUED_WORDS = frozenset(
    "a an the in on at of to for with from by into onto over under near through and or but while his her their "
    "its is are was were".split()
)

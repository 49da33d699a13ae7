"""Token ids reserved in every vocabulary, shared by the models and the data rows. Imports nothing: Ray Data's
read workers import the row code afresh every epoch, and must not pay for torch to learn two integers."""

PAD, UNK = 0, 1

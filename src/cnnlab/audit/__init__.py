"""Data audit: the checks (`checks`: duplicates, leakage across splits, label issues, outliers, class balance)
and their use (`gate`: `cnnlab audit`, the gate before training, the report's "About the data")."""

# evaluation stage rules (being written).

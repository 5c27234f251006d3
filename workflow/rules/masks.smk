# masks stage rules (being written).

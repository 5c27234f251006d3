# flow stage rules (being written).

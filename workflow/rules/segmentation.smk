# segmentation stage rules (being written).

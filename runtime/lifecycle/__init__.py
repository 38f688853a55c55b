"""One run's life: assembling its parts, initial weights, where it starts, how it ended, its final numbers and
summary.json."""

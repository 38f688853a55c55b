"""One run's life: assembling its parts, initial weights, where it starts, stop signals, how it ended, its final
numbers and summary.json."""

"""Which conversations a task keeps: longest responses, k-means, k-center, quality."""

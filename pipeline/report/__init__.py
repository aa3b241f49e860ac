"""The human side of a run's report: ``report/index.html`` with plots and thumbnails."""

"""Pictures and pages: figures (pure functions of arrays), the HTML report, published reference numbers."""

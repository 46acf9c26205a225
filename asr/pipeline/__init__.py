"""The recipe's pipeline: outputs keyed by what made them (outputs), what each depends on (graph), the
stages that make them (stages), and the runner (runner)."""

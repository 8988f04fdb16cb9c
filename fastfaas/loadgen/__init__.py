"""fastfaas's load generator: engine, distributions, histograms, reports."""

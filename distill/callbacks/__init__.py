"""Lightning callbacks: throughput, loss history for reports."""

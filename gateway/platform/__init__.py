"""What any process of the gateway needs: settings, logs, metrics, the clock, ids, the event loop,
its lease, the sealing key and the HTTP edge's refusals."""

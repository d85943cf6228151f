"""The send path: what a request must be (validation, numbers, segments), the workflow from
reservation to settlement, and the queue's dispatcher."""

"""Event pollers: run queued asynchronous invocations through the scheduler."""

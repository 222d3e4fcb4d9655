"""The plan room: what a case will change, read, undo and lock (--plan), and the IAM policy it needs."""

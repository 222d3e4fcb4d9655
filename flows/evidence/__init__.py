"""The evidence room: the typed results, UI artifacts, markdown, history, audit and Slack notices."""

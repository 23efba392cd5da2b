"""OSCP 2.0, Flexibility Provider side: the endpoint the grid operator calls, and our client."""

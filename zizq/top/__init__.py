"""`zizq top`: a live terminal view of a server, fed by its admin `/events` WebSocket.

`model` holds the state (no Textual), `render` draws it as text, `connection` keeps the
WebSocket open, `app` is the Textual shell around them.
"""

"""The local stack: a SeaweedFS S3 server and a Ray head on 127.0.0.1, started and stopped by PID.

Modules (imported directly; this package imports nothing so that ``infra.local.config`` stays light):
``config`` (StackSettings), ``stack`` (LocalStack), ``weed`` (WeedServer), ``ray_head`` (RayHead),
``processes`` (PID records, port checks), ``envfile`` (stack.env, load_settings), ``sockets`` (which
addresses the stack's processes listen on).
"""

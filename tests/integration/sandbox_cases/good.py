"""The good version redeployed over a bad one."""


def handler(event, context):
    return {"good": event.get("nonce")}

"""The smallest function: greet whoever the event names."""


def handler(event, context):
    name = (event or {}).get("name", "world")
    print(f"greeting {name}")
    return {"message": f"Hello, {name}!", "request_id": context.aws_request_id}

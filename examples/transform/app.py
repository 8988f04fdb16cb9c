"""A JSON transform: summarise a list of orders (the event) into totals per customer."""


def handler(event, context):
    orders = (event or {}).get("orders", [])
    totals: dict[str, float] = {}
    for order in orders:
        customer = str(order.get("customer", "unknown"))
        totals[customer] = round(totals.get(customer, 0.0) + float(order.get("amount", 0)), 2)
    top = max(totals, key=totals.get) if totals else None
    return {"customers": len(totals), "totals": totals, "top": top, "orders": len(orders)}

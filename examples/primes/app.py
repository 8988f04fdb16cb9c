"""CPU-bound: count primes below `n` (a sieve). CPU share follows memory_mb (see fastfaas.json)."""


def handler(event, context):
    n = int((event or {}).get("n", 200_000))
    if not 2 <= n <= 50_000_000:
        raise ValueError("n must be between 2 and 50,000,000")
    sieve = bytearray([1]) * n
    sieve[0:2] = b"\0\0"
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n, i)))
    return {"n": n, "primes": sum(sieve), "ms_left": context.get_remaining_time_in_millis()}

"""A CoAP device for the hub's tests, on aiocoap.

Usage: aiocoap_device.py PORT PAD_BYTES

- /big: observable; a JSON document {"value": n, "pad": "xxx..."} of about PAD_BYTES bytes, so notifications
  go block-wise (Block2); n grows every 0.3 s; Max-Age 2.
- /cmd: takes POST and PUT; prints "CMD <method> <content-format> <length> <first 60 bytes>" on stdout and
  answers 2.04. Large payloads arrive block-wise (Block1) and aiocoap reassembles them.

Prints "READY" once it listens.
"""

import asyncio
import json
import sys

import aiocoap
import aiocoap.resource as resource


class Big(resource.ObservableResource):
    def __init__(self, pad):
        super().__init__()
        self.value = 0
        self.pad = pad

    async def render_get(self, request):
        body = json.dumps({"value": self.value, "pad": "x" * self.pad}).encode()
        return aiocoap.Message(payload=body, content_format=50, max_age=2)

    async def tick(self):
        while True:
            await asyncio.sleep(0.3)
            self.value += 1
            self.updated_state()


class Cmd(resource.Resource):
    async def render_post(self, request):
        return self.record("POST", request)

    async def render_put(self, request):
        return self.record("PUT", request)

    def record(self, method, request):
        head = request.payload[:60].decode("utf-8", errors="replace")
        print(f"CMD {method} {request.opt.content_format} {len(request.payload)} {head}", flush=True)
        return aiocoap.Message(code=aiocoap.CHANGED)


async def main():
    port = int(sys.argv[1])
    big = Big(int(sys.argv[2]))
    site = resource.Site()
    site.add_resource(["big"], big)
    site.add_resource(["cmd"], Cmd())
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    print("READY", flush=True)
    ticker = asyncio.create_task(big.tick())
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        ticker.cancel()


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""SOX devices for the hub's tests: real XMPP clients (slixmpp) that publish to a publish-subscribe service.

A SOX device D has node D_meta (its description: <device><transducer .../></device>) and node D_data (its
readings: <data><transducerValue .../></data>). Commands:

  meta   --device D --transducer id,name,units,min,max[,actuate] ...   create D_meta and D_data, publish the meta
  data   --device D --value id=typedValue[@timestamp] ...              publish one data item
  raw    --node N --xml '<x/>' [--id I]                                create N if needed, publish one item
  listen --node N --count K [--timeout S]                               subscribe, print K item payloads, exit
  load   --prefix P --devices N --rate R --seconds S                   N devices, each R items/s for S seconds
  forge  --to JID --node N --xml '<x/>'                                 send a pubsub event that does not come from
                                                                        the service (a forgery the hub must drop)

Every command prints one JSON object on its last line. The account must be allowed to create nodes.
"""

import argparse
import asyncio
import json
import logging
import sys
import time
from datetime import datetime, timezone
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

import slixmpp

PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = "http://jabber.org/protocol/pubsub#event"


class Device(slixmpp.ClientXMPP):
    def __init__(self, args, resource):
        super().__init__(f"{args.jid}/{resource}", args.password)
        self.ca_certs = args.ca
        # The test server speaks STARTTLS on its client port (and plaintext where it does not require TLS).
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = True
        self.args = args
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0060")
        self.register_plugin("xep_0004")
        self.ready = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: self.fail("authentication failed"))
        self.add_event_handler("connection_failed", lambda e: self.fail(f"connection failed: {e}"))

    def fail(self, reason):
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(reason))

    async def on_start(self, _event):
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)

    async def open(self):
        host, port = self.args.address.rsplit(":", 1)
        self.connect(host, int(port))
        await asyncio.wait_for(self.ready, 20)

    async def ensure_node(self, node):
        # Keep more than Prosody's default of 20 items, so that a subscriber that finds the node late (a loaded
        # machine) can still fetch every item published before it subscribed.
        form = self.plugin["xep_0004"].make_form(ftype="submit")
        form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config")
        form.add_field(var="pubsub#max_items", value="256")
        try:
            await self.plugin["xep_0060"].create_node(self.args.service, node, config=form)
        except slixmpp.exceptions.IqError as e:
            if e.condition != "conflict":
                raise

    async def publish_xml(self, node, xml, item_id=None):
        await self.plugin["xep_0060"].publish(self.args.service, node, id=item_id, payload=ET.fromstring(xml))


def meta_xml(device, transducers):
    parts = [f"<device xmlns='http://sox.example/device' name={quoteattr(device)} type='truck'>"]
    for spec in transducers:
        fields = spec.split(",")
        tid, name, units, lo, hi = (fields + [""] * 5)[:5]
        actuate = "true" if len(fields) > 5 and fields[5] == "actuate" else "false"
        parts.append(
            f"<transducer id={quoteattr(tid)} name={quoteattr(name)} units={quoteattr(units)} "
            f"minValue={quoteattr(lo)} maxValue={quoteattr(hi)} canActuate='{actuate}'/>"
        )
    parts.append("</device>")
    return "".join(parts)


def data_xml(values):
    parts = ["<data>"]
    for spec in values:
        tid, _, rest = spec.partition("=")
        value, _, stamp = rest.partition("@")
        stamp = stamp or datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        parts.append(
            f"<transducerValue id={quoteattr(tid)} typedValue={quoteattr(value)} rawValue={quoteattr(value)} "
            f"timestamp={quoteattr(stamp)}/>"
        )
    parts.append("</data>")
    return "".join(parts)


async def cmd_meta(args):
    dev = Device(args, "meta")
    await dev.open()
    for node in (f"{args.device}_meta", f"{args.device}_data"):
        await dev.ensure_node(node)
    await dev.publish_xml(f"{args.device}_meta", meta_xml(args.device, args.transducer))
    await dev.disconnect()
    return {"published": 1}


async def cmd_data(args):
    dev = Device(args, "data")
    await dev.open()
    await dev.ensure_node(f"{args.device}_data")
    await dev.publish_xml(f"{args.device}_data", data_xml(args.value))
    await dev.disconnect()
    return {"published": 1}


async def cmd_raw(args):
    dev = Device(args, "raw")
    await dev.open()
    await dev.ensure_node(args.node)
    await dev.publish_xml(args.node, args.xml, args.id)
    await dev.disconnect()
    return {"published": 1}


async def cmd_listen(args):
    dev = Device(args, "listen")
    received = []
    done = asyncio.get_event_loop().create_future()

    def on_event(msg):
        for items in msg.xml.iter(f"{{{EVENT}}}items"):
            if items.get("node") != args.node:
                continue
            for item in items.iter(f"{{{EVENT}}}item"):
                for payload in item:
                    received.append(ET.tostring(payload, encoding="unicode"))
                    print(json.dumps({"item": received[-1]}), flush=True)
        if len(received) >= args.count and not done.done():
            done.set_result(True)

    dev.add_event_handler("pubsub_publish", on_event)
    await dev.open()
    await dev.ensure_node(args.node)
    await dev.plugin["xep_0060"].subscribe(args.service, args.node)
    print(json.dumps({"subscribed": args.node}), flush=True)
    try:
        await asyncio.wait_for(done, args.timeout)
    finally:
        await dev.disconnect()
    return {"received": len(received), "items": received}


async def cmd_forge(args):
    dev = Device(args, "forge")
    await dev.open()
    dev.send_raw(
        f"<message to={quoteattr(args.to)}><event xmlns='{EVENT}'><items node={quoteattr(args.node)}>"
        f"<item id='forged'>{args.xml}</item></items></event></message>"
    )
    await dev.disconnect()
    return {"sent": 1}


async def run_load_device(args, index, start_at, stats):
    """One truck: its own connection, nodes and meta; then `rate` data items a second (speed, pm25, and the send
    time in µs as `sent_us`, for latency), sent as raw stanzas with at most `window` publishes waiting for their
    answer."""
    name = f"{args.prefix}{index}"
    dev = Device(args, f"load-{name}")
    await dev.open()
    for node in (f"{name}_meta", f"{name}_data"):
        await dev.ensure_node(node)
    await dev.publish_xml(f"{name}_meta", meta_xml(name, ["speed,Speed,km/h,0,200", "pm25,PM2.5,ug/m3,0,1000"]))
    outstanding = 0
    room = asyncio.Event()
    room.set()

    def on_iq(iq):
        nonlocal outstanding
        if not iq["id"].startswith("L"):
            return
        outstanding -= 1
        if iq["type"] == "result":
            stats["acked"] += 1
        else:
            stats["errors"] += 1
        room.set()

    dev.register_handler(
        slixmpp.xmlstream.handler.Callback(
            "load-answers", slixmpp.xmlstream.matcher.MatchXPath("{jabber:client}iq"), on_iq
        )
    )
    while time.monotonic() < start_at:
        await asyncio.sleep(0.01)
    node = quoteattr(f"{name}_data")
    interval = 1.0 / args.rate
    begin = time.monotonic()
    n = 0
    while True:
        now = time.monotonic()
        if now - begin >= args.seconds:
            break
        due = int((now - begin) / interval) + 1
        while n < due:
            while outstanding >= args.window:
                room.clear()
                await room.wait()
            stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
            seq = stats["sent"]
            dev.send_raw(
                f"<iq type='set' id='L{index}-{n}' to='{args.service}'><pubsub xmlns='{PUBSUB}'>"
                f"<publish node={node}><item><data>"
                f"<transducerValue id='speed' typedValue='{n % 200}' timestamp='{stamp}'/>"
                f"<transducerValue id='pm25' typedValue='{seq % 1000}' timestamp='{stamp}'/>"
                f"<transducerValue id='sent_us' typedValue='{time.time_ns() // 1000}' timestamp='{stamp}'/>"
                f"</data></item></publish></pubsub></iq>"
            )
            outstanding += 1
            n += 1
            stats["sent"] += 1
        await asyncio.sleep(min(interval, 0.01))
    deadline = time.monotonic() + 30
    while outstanding > 0 and time.monotonic() < deadline:
        room.clear()
        try:
            await asyncio.wait_for(room.wait(), 1)
        except asyncio.TimeoutError:
            pass
    await dev.disconnect()


async def cmd_load(args):
    stats = {"sent": 0, "acked": 0, "errors": 0}
    start_at = time.monotonic() + 2 + args.devices * 0.05
    begin = time.time()
    await asyncio.gather(*(run_load_device(args, i, start_at, stats) for i in range(args.devices)))
    return {**stats, "devices": args.devices, "seconds": round(time.time() - begin, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--service", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("meta")
    p.add_argument("--device", required=True)
    p.add_argument("--transducer", action="append", default=[])
    p = sub.add_parser("data")
    p.add_argument("--device", required=True)
    p.add_argument("--value", action="append", default=[])
    p = sub.add_parser("raw")
    p.add_argument("--node", required=True)
    p.add_argument("--xml", required=True)
    p.add_argument("--id")
    p = sub.add_parser("listen")
    p.add_argument("--node", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30)
    p = sub.add_parser("forge")
    p.add_argument("--to", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--xml", required=True)
    p = sub.add_parser("load")
    p.add_argument("--prefix", required=True)
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--rate", type=float, default=10)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    command = {"meta": cmd_meta, "data": cmd_data, "raw": cmd_raw, "listen": cmd_listen, "load": cmd_load,
               "forge": cmd_forge}
    result = asyncio.run(command[args.command](args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

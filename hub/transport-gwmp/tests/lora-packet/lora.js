// The independent LoRaWAN peer of the GWMP tests: builds and checks frames with the npm package lora-packet.
//
// Reads a JSON array of requests on stdin and writes a JSON array of answers on stdout, one per request.
// All hex is big-endian as people write it (DevAddr 26011bda, EUIs 0004a30b001c0530); keys are 32 hex digits.
//
//   {"op": "uplink", "dev_addr", "fcnt" (32-bit), "fport", "payload", "confirmed", "nwk_s_key", "app_s_key"}
//       -> {"phy": hex}
//   {"op": "join_request", "app_eui", "dev_eui", "dev_nonce" (number), "app_key"} -> {"phy": hex}
//   {"op": "downlink", "dev_addr", "fcnt", "fport", "payload", "ack", "fpending", "confirmed",
//    "nwk_s_key", "app_s_key"} -> {"phy": hex}
//   {"op": "decode_downlink", "phy", "nwk_s_key", "app_s_key", "fcnt_msb" (number, default 0)}
//       -> {"mtype", "dev_addr", "fcnt", "fport", "ack", "fpending", "mic_ok", "payload"}
//   {"op": "decode_join_accept", "phy", "app_key", "dev_nonce" (number)}
//       -> {"mic_ok", "app_nonce", "net_id", "dev_addr", "dl_settings", "rx_delay", "cf_list", "nwk_s_key", "app_s_key"}
//
// Run `npm install` in this folder first.

"use strict";

const lora = require("lora-packet");

const hex = (text) => Buffer.from(text, "hex");
const u16 = (n) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};
// The upper 16 bits of a 32-bit frame counter, as lora-packet appends them to the B0/Ai blocks: wire order.
const msb = (fcnt) => {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(Math.floor(fcnt / 0x10000));
  return b;
};

function uplink(r) {
  const packet = lora.fromFields(
    {
      MType: r.confirmed ? "Confirmed Data Up" : "Unconfirmed Data Up",
      DevAddr: hex(r.dev_addr),
      FCtrl: { ADR: false, ACK: false, ADRACKReq: false, FPending: false },
      FCnt: u16(r.fcnt & 0xffff),
      FPort: r.fport,
      payload: hex(r.payload),
    },
    hex(r.app_s_key),
    hex(r.nwk_s_key),
    undefined,
    msb(r.fcnt),
  );
  return { phy: packet.getPHYPayload().toString("hex") };
}

function downlink(r) {
  const fields = {
    MType: r.confirmed ? "Confirmed Data Down" : "Unconfirmed Data Down",
    DevAddr: hex(r.dev_addr),
    FCtrl: { ADR: false, ACK: !!r.ack, ADRACKReq: false, FPending: !!r.fpending },
    FCnt: u16(r.fcnt & 0xffff),
    // lora-packet builds data frames with a port and a payload only.
    FPort: r.fport,
    payload: hex(r.payload),
  };
  const packet = lora.fromFields(fields, hex(r.app_s_key), hex(r.nwk_s_key), undefined, msb(r.fcnt));
  return { phy: packet.getPHYPayload().toString("hex") };
}

function joinRequest(r) {
  const packet = lora.fromFields(
    { MType: "Join Request", AppEUI: hex(r.app_eui), DevEUI: hex(r.dev_eui), DevNonce: u16(r.dev_nonce) },
    undefined,
    undefined,
    hex(r.app_key),
  );
  return { phy: packet.getPHYPayload().toString("hex") };
}

function decodeDownlink(r) {
  const packet = lora.fromWire(hex(r.phy));
  const msbBytes = msb((r.fcnt_msb || 0) * 0x10000);
  const fport = packet.getFPort();
  return {
    mtype: packet.getMType(),
    dev_addr: packet.DevAddr.toString("hex"),
    fcnt: packet.getFCnt(),
    fport: fport === undefined ? null : fport,
    ack: packet.getFCtrlACK(),
    fpending: packet.getFCtrlFPending(),
    mic_ok: lora.verifyMIC(packet, hex(r.nwk_s_key), undefined, msbBytes),
    payload: fport === null || fport === undefined ? "" : lora.decrypt(packet, hex(r.app_s_key), hex(r.nwk_s_key), msbBytes).toString("hex"),
  };
}

function decodeJoinAccept(r) {
  const appKey = hex(r.app_key);
  const encrypted = lora.fromWire(hex(r.phy));
  const packet = lora.fromWire(lora.decryptJoinAccept(encrypted, appKey));
  const keys = lora.generateSessionKeys(appKey, packet.NetID, packet.AppNonce, u16(r.dev_nonce));
  return {
    mtype: packet.getMType(),
    mic_ok: lora.verifyMIC(packet, undefined, appKey),
    app_nonce: packet.AppNonce.toString("hex"),
    net_id: packet.NetID.toString("hex"),
    dev_addr: packet.DevAddr.toString("hex"),
    dl_settings: packet.DLSettings.readUInt8(0),
    rx_delay: packet.RxDelay.readUInt8(0),
    cf_list: packet.CFList ? packet.CFList.toString("hex") : "",
    nwk_s_key: keys.NwkSKey.toString("hex"),
    app_s_key: keys.AppSKey.toString("hex"),
  };
}

const ops = {
  uplink,
  downlink,
  join_request: joinRequest,
  decode_downlink: decodeDownlink,
  decode_join_accept: decodeJoinAccept,
};

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const requests = JSON.parse(input);
  const answers = requests.map((r) => {
    const op = ops[r.op];
    if (!op) throw new Error(`unknown op ${r.op}`);
    return op(r);
  });
  process.stdout.write(JSON.stringify(answers));
});

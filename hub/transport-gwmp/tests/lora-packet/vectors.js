// Writes the LoRaWAN test vectors the adapter's native tests read (plugins/lorawan/tests/fixtures/lora-packet.json):
// frames built by lora-packet, an implementation independent of ours, with known keys.
//
//   npm install && node vectors.js > ../../../../plugins/lorawan/tests/fixtures/lora-packet.json

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

const abp = {
  dev_eui: "0004a30b001c0531",
  dev_addr: "26011bda",
  nwk_s_key: "44024241ed4ce9a68c6a8bc055233fd3",
  app_s_key: "ec925802ae430ca77fd3dd73cb2cc588",
};
const otaa = {
  dev_eui: "0004a30b001c0530",
  join_eui: "70b3d57ed0000000",
  app_key: "2b7e151628aed2a6abf7158809cf4f3c",
};

function data(mtype, fields) {
  const f = {
    MType: mtype,
    DevAddr: hex(abp.dev_addr),
    FCtrl: { ADR: false, ACK: !!fields.ack, ADRACKReq: false, FPending: !!fields.fpending },
    FCnt: u16(fields.fcnt & 0xffff),
  };
  if (fields.fport !== null) {
    f.FPort = fields.fport;
    f.payload = hex(fields.payload);
  }
  const packet = lora.fromFields(f, hex(abp.app_s_key), hex(abp.nwk_s_key), undefined, msb(fields.fcnt));
  return { ...fields, phy: packet.getPHYPayload().toString("hex") };
}

// Cayenne LPP: temperature 21.5 °C on channel 1, humidity 40.5 %RH on channel 2.
const cayenne = "016700d7026851";
const uplinks = [
  data("Unconfirmed Data Up", { fcnt: 0, fport: 2, payload: cayenne, confirmed: false }),
  data("Unconfirmed Data Up", { fcnt: 1, fport: 2, payload: "016700e1", confirmed: false }),
  data("Confirmed Data Up", { fcnt: 2, fport: 2, payload: "0167ff9c", confirmed: true }),
  data("Unconfirmed Data Up", { fcnt: 3, fport: 0, payload: "02", confirmed: false }),
  data("Unconfirmed Data Up", { fcnt: 65535, fport: 2, payload: "016700c8", confirmed: false }),
  data("Unconfirmed Data Up", { fcnt: 65537, fport: 2, payload: "016700c9", confirmed: false }),
  data("Unconfirmed Data Up", { fcnt: 4, fport: 5, payload: "018806", confirmed: false }),
];
const downlinks = [
  data("Unconfirmed Data Down", { fcnt: 1, fport: 10, payload: "0102", ack: false, fpending: true, confirmed: false }),
  data("Confirmed Data Down", { fcnt: 70000, fport: 10, payload: "a1b2c3d4e5f60718293a4b5c6d7e8f90112233", ack: true, confirmed: true }),
];

const joinRequest = (devNonce) =>
  lora
    .fromFields(
      { MType: "Join Request", AppEUI: hex(otaa.join_eui), DevEUI: hex(otaa.dev_eui), DevNonce: u16(devNonce) },
      undefined,
      undefined,
      hex(otaa.app_key),
    )
    .getPHYPayload()
    .toString("hex");

const keys = lora.generateSessionKeys(hex(otaa.app_key), hex("000013"), hex("000001"), u16(0x1234));

process.stdout.write(
  JSON.stringify(
    {
      generator: "lora-packet " + require("lora-packet/package.json").version,
      abp,
      otaa,
      uplinks,
      downlinks,
      join_requests: [
        { dev_nonce: 0x1234, phy: joinRequest(0x1234) },
        { dev_nonce: 0x1235, phy: joinRequest(0x1235) },
      ],
      session_keys: {
        app_key: otaa.app_key,
        app_nonce: "000001",
        net_id: "000013",
        dev_nonce: 0x1234,
        nwk_s_key: keys.NwkSKey.toString("hex"),
        app_s_key: keys.AppSKey.toString("hex"),
      },
    },
    null,
    2,
  ) + "\n",
);

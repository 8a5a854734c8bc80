// A minimal PNG encoder for greyscale label maps (8 or 16 bits a pixel): the page sends and
// downloads the raw label values themselves, which a canvas (RGBA only) cannot export.
"use strict";

const PNG_CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function pngCrc32(bytes) {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = PNG_CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, pngCrc32(out.subarray(4, 8 + data.length)));
  return out;
}

// zlib (RFC 1950) stream of `bytes`: the browser's deflate where it has one, else stored blocks.
async function zlibCompress(bytes) {
  if (typeof CompressionStream !== "undefined") {
    const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const blocks = Math.max(1, Math.ceil(bytes.length / 65535));
  const out = new Uint8Array(2 + bytes.length + 5 * blocks + 4);
  out[0] = 0x78; out[1] = 0x01;
  let o = 2;
  for (let b = 0; b < blocks; b++) {
    const start = b * 65535, len = Math.min(65535, bytes.length - start);
    out[o++] = b === blocks - 1 ? 1 : 0;
    out[o++] = len & 0xff; out[o++] = len >>> 8;
    out[o++] = ~len & 0xff; out[o++] = (~len >>> 8) & 0xff;
    out.set(bytes.subarray(start, start + len), o);
    o += len;
  }
  let a = 1, s = 0;
  for (let i = 0; i < bytes.length; i++) { a = (a + bytes[i]) % 65521; s = (s + a) % 65521; }
  new DataView(out.buffer).setUint32(o, ((s << 16) | a) >>> 0);
  return out;
}

// A greyscale PNG (colour type 0) of `values` (row-major, width * height) at `bitDepth` 8 or 16.
async function encodeGreyPNG(width, height, values, bitDepth) {
  const bytesPerPixel = bitDepth / 8;
  const rowLength = 1 + width * bytesPerPixel;
  const raw = new Uint8Array(rowLength * height);
  for (let y = 0; y < height; y++) {
    let o = y * rowLength + 1;  // filter byte 0 (none) first
    const row = y * width;
    if (bitDepth === 8) {
      for (let x = 0; x < width; x++) raw[o++] = values[row + x];
    } else {
      for (let x = 0; x < width; x++) { const v = values[row + x]; raw[o++] = v >>> 8; raw[o++] = v & 0xff; }
    }
  }
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header[8] = bitDepth; header[9] = 0; header[10] = 0; header[11] = 0; header[12] = 0;
  const signature = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return new Blob([signature, pngChunk("IHDR", header), pngChunk("IDAT", await zlibCompress(raw)),
                   pngChunk("IEND", new Uint8Array(0))], { type: "image/png" });
}

// Benchmark handler: accepts every packet and does nothing (measures the primary and the channel alone).
export const handler = { name: 'sink', onPacket() {} };

import { createDemultiplexer, createFrameParser } from "./command-server-client";

const frame = (type: number, id: number, payload: string) => {
  const body = Buffer.from(payload);
  const header = Buffer.alloc(9);
  header.writeUInt8(type, 0);
  header.writeUInt32BE(id, 1);
  header.writeUInt32BE(body.length, 5);
  return Buffer.concat([header, body]);
};

const dockerFrame = (stream: number, payload: Buffer) => {
  const header = Buffer.alloc(8);
  header.writeUInt8(stream, 0);
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
};

describe("the command server's frames inside Docker's stream", () => {
  it("survive being cut anywhere, byte by byte", () => {
    const server = Buffer.concat([frame(1, 7, "out"), frame(2, 8, "err"), frame(3, 7, '{"code":0,"signal":null}')]);
    const wire = Buffer.concat([dockerFrame(1, server.subarray(0, 10)), dockerFrame(2, Buffer.from("log line\n")), dockerFrame(1, server.subarray(10))]);
    const frames: string[] = [];
    const stderr: string[] = [];
    const parse = createFrameParser((type, id, payload) => frames.push(`${type}:${id}:${payload.toString()}`), (problem) => frames.push(problem));
    const demux = createDemultiplexer((payload, stream) => (stream === 2 ? stderr.push(payload.toString()) : parse(payload)));
    for (let index = 0; index < wire.length; index += 1) demux(wire.subarray(index, index + 1));
    expect(frames).toEqual(["1:7:out", "2:8:err", '3:7:{"code":0,"signal":null}']);
    expect(stderr.join("")).toBe("log line\n");
  });

  it("reports a stream that is not frames once", () => {
    const problems: string[] = [];
    const parse = createFrameParser(() => {}, (problem) => problems.push(problem));
    parse(Buffer.from("Traceback (most recent call last):\n"));
    parse(Buffer.from("more"));
    expect(problems).toHaveLength(1);
  });
});

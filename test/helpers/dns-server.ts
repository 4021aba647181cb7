import type { Express } from 'express';
import request from 'supertest';
import dns2 from 'dns2';

const { Packet } = dns2;
/** RCODE 3 (dns2's typings do not list Packet.RCODE). */
const NXDOMAIN = 3;

/**
 * A real DNS server (UDP, loopback, a free port) whose TXT records a test sets: what the hostname
 * verification asks when the app is configured with DNS_SERVERS=<this.address>. Unknown names get NXDOMAIN.
 */
export interface TestDnsServer {
  /** `127.0.0.1:<port>`, the form DNS_SERVERS takes. */
  address: string;
  setTxt(name: string, values: string[]): void;
  remove(name: string): void;
  /** Questions asked so far (lower-cased names). */
  asked: string[];
  close(): Promise<void>;
}

export async function startDnsServer(): Promise<TestDnsServer> {
  const records = new Map<string, string[]>();
  const asked: string[] = [];
  const server = dns2.createServer({
    udp: true,
    handle: (req, send) => {
      const response = Packet.createResponseFromRequest(req);
      const [question] = req.questions;
      const name = question.name.toLowerCase();
      asked.push(name);
      const values = records.get(name);
      if (!values) response.header.rcode = NXDOMAIN;
      else
        for (const data of values)
          response.answers.push({
            name: question.name,
            type: Packet.TYPE.TXT,
            class: Packet.CLASS.IN,
            ttl: 1,
            data,
          } as never);
      void send(response);
    },
  });
  const addresses = await server.listen({ udp: { port: 0, address: '127.0.0.1' } });
  const port = (addresses as { udp: { port: number } }).udp.port;
  // Once only: closing a closed UDP socket throws, and a test may close the server before tear-down does.
  let closing: Promise<void> | undefined;
  return {
    address: `127.0.0.1:${port}`,
    setTxt: (name, values) => records.set(name.toLowerCase(), values),
    remove: (name) => records.delete(name.toLowerCase()),
    asked,
    close: () => (closing ??= server.close() as Promise<void>),
  };
}

/**
 * Claim a hostname for a store through the API, publish its TXT record on the test DNS server and verify
 * it, as an owner would: afterwards the hostname routes to the store.
 */
export async function claimHostname(
  app: Express,
  token: string,
  storeId: string,
  hostname: string,
  dns: TestDnsServer,
) {
  const headers = { Authorization: `Bearer ${token}` };
  const claim = await request(app).post(`/api/stores/${storeId}/hostnames`).set(headers).send({ hostname });
  if (claim.status !== 201) throw new Error(`claiming ${hostname} answered ${claim.status} ${claim.text}`);
  const { name, value } = claim.body.verification as { name: string; value: string };
  dns.setTxt(name, [value]);
  const verified = await request(app)
    .post(`/api/stores/${storeId}/hostnames/${encodeURIComponent(claim.body.hostname)}/verify`)
    .set(headers);
  if (verified.status !== 200) throw new Error(`verifying ${hostname} answered ${verified.status} ${verified.text}`);
  return verified.body as { hostname: string; status: 'verified'; verifiedAt: string };
}

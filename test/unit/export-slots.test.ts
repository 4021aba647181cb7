import { ExportSlots } from '../../src/exports/export.service';
import { AppError } from '../../src/lib/errors';

/** The exports one API instance runs at once: a few per owner, a few in all; each slot given back once. */
describe('ExportSlots', () => {
  const refusal = (take: () => unknown) => {
    try {
      take();
    } catch (err) {
      const e = err as AppError;
      return { status: e.status, code: e.code, retryAfter: e.extra.headers?.['Retry-After'] };
    }
    throw new Error('not refused');
  };

  test('an owner past its share gets 429, the instance past its limit 503, both with Retry-After', () => {
    const slots = new ExportSlots({ perInstance: 3, perOwner: 2 });
    const a1 = slots.take('a');
    slots.take('a');
    expect(refusal(() => slots.take('a'))).toEqual({ status: 429, code: 'RATE_LIMITED', retryAfter: '10' });
    slots.take('b');
    expect(refusal(() => slots.take('c'))).toEqual({ status: 503, code: 'SERVICE_UNAVAILABLE', retryAfter: '10' });
    expect(slots.active).toBe(3);

    // Giving one back twice frees one slot only.
    a1();
    a1();
    expect(slots.active).toBe(2);
    slots.take('c');
    expect(refusal(() => slots.take('d'))).toMatchObject({ status: 503 });
  });
});

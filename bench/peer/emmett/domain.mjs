// The workload's two aggregates in Emmett's style: a state, `evolve` (state, event) →
// state, and business functions (command, state) → event that throw Emmett's typed
// errors. They make the decisions Chronicle's domain makes for the same commands: an
// account is opened once; a deposit needs an opened account, a positive amount in its
// currency and skips a reference it has already applied (the workload never closes an
// account, so closing is left out); a booking request needs valid seats, a positive
// price and a time range in the future of at most a year.

import { IllegalStateError, NotFoundError, ValidationError } from '@event-driven-io/emmett';

// ----------------------------------------------------------------------------- account

export const initialAccount = () => ({ status: 'empty' });

export const evolveAccount = (state, { type, data }) => {
  switch (type) {
    case 'AccountOpened':
      return { status: 'opened', currency: data.currency, balance: 0, references: new Set() };
    case 'FundsDeposited': {
      const references = new Set(state.references);
      if (data.reference !== null) references.add(data.reference);
      return { ...state, balance: data.balance_after, references };
    }
    default:
      return state;
  }
};

export const openAccount = ({ owner, currency, at }, state) => {
  if (state.status !== 'empty') throw new IllegalStateError('the account already exists');
  return {
    type: 'AccountOpened',
    data: { owner, currency, overdraft_limit: 0, opened_at: at.toISOString() },
  };
};

/** Returns the event, or no event for a reference already applied. */
export const depositFunds = ({ amount, currency, reference, at }, state) => {
  if (state.status !== 'opened') throw new NotFoundError({ message: 'no such account' });
  if (reference !== null && state.references.has(reference)) return [];
  if (!Number.isSafeInteger(amount) || amount <= 0)
    throw new ValidationError('amount: must be a positive integer');
  if (currency !== null && currency !== state.currency)
    throw new ValidationError(`currency ${currency} does not match the account's ${state.currency}`);
  const balanceAfter = state.balance + amount;
  if (!Number.isSafeInteger(balanceAfter))
    throw new ValidationError('the balance would leave the representable range');
  return {
    type: 'FundsDeposited',
    data: { amount, reference, balance_after: balanceAfter, occurred_at: at.toISOString() },
  };
};

// ----------------------------------------------------------------------------- booking

const MAX_DURATION_MS = 366 * 24 * 3600 * 1000;
const MAX_SEATS = 100;

export const initialBooking = () => ({ status: 'empty' });

export const evolveBooking = (state, { type }) =>
  type === 'BookingRequested' ? { status: 'requested' } : state;

export const requestBooking = ({ request, at }, state) => {
  if (state.status !== 'empty') throw new IllegalStateError('the booking already exists');
  const { resource_id, seats, starts_at, ends_at, price } = request;
  if (!resource_id) throw new ValidationError('resource_id: is required');
  if (seats.length === 0 || seats.length > MAX_SEATS)
    throw new ValidationError('seats: between 1 and 100 seats per booking');
  if (new Set(seats).size !== seats.length) throw new ValidationError('seats: a seat is listed twice');
  if (!Number.isSafeInteger(price.amount) || price.amount <= 0)
    throw new ValidationError('price: must be positive');
  if (starts_at <= at) throw new ValidationError('starts_at: must be in the future');
  if (ends_at <= starts_at) throw new ValidationError('ends_at: must be after starts_at');
  if (ends_at - starts_at > MAX_DURATION_MS)
    throw new ValidationError('ends_at: a booking lasts at most 366 days');
  return {
    type: 'BookingRequested',
    data: {
      ...request,
      starts_at: starts_at.toISOString(),
      ends_at: ends_at.toISOString(),
      requested_at: at.toISOString(),
    },
  };
};

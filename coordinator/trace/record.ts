/**
 * Recording a trace (`ferry trace record`): asks the VM's agent for `trace.record` (agent/control/trace.ts), gathers
 * its samples from the events into a trace (shared/trace.ts; file.ts writes it).
 */
import { ErrorCode, FerryError } from '../../shared/errors.js';
import { traceSampleEventSchema, type TraceRecordReply, type TraceSampleEvent } from '../../shared/protocol.js';
import { PAGE_SIZE } from '../../shared/constants.js';
import { TRACE_FORMAT, TRACE_VERSION, traceFileSchema, type TraceFile, type TraceSample } from '../../shared/trace.js';
import type { AgentClient } from '../connect.js';

export interface RecordRequest {
  name: string;
  intervalMs: number;
  durationMs: number;
}

export interface RecordedTrace {
  trace: TraceFile;
  reply: TraceRecordReply;
  /** The vCPU's write count when the recording began and at its last sample: the writes it recorded. */
  vcpuWrites: { fromN: number; toN: number };
}

/** Records on the agent behind `client`; `onSample` sees each sample as it arrives (progress). */
export async function recordTrace(client: AgentClient, request: RecordRequest, onSample?: (event: TraceSampleEvent) => void): Promise<RecordedTrace> {
  const samples: TraceSample[] = [];
  let outOfOrder: number | undefined;
  let lastN = 0;
  const reply = await client.request('trace.record', request, {
    // A recording answers after its duration: the agent's own reply comes then, not before.
    timeoutMs: request.durationMs + 30_000,
    onEvent: (body) => {
      const event = traceSampleEventSchema.parse(body);
      if (event.sample !== samples.length) outOfOrder ??= event.sample;
      samples.push(event.runs);
      lastN = event.n;
      onSample?.(event);
    },
  });
  if (outOfOrder !== undefined || reply.samples !== samples.length) {
    throw new FerryError(ErrorCode.PROTOCOL, `${reply.host} sent ${samples.length} samples of ${request.name}'s trace and counted ${reply.samples}`, 'record again');
  }
  if (samples.length === 0) {
    throw new FerryError(ErrorCode.VM_STATE, `the recording of ${request.name} ended before its first sample (${reply.stoppedBy ?? 'stopped'})`, 'record again once the VM runs where it is going');
  }
  const trace = traceFileSchema.parse({
    format: TRACE_FORMAT, version: TRACE_VERSION, vm: reply.name, host: reply.host, recordedAt: reply.startedAt, memoryBytes: reply.memoryBytes,
    pageSize: PAGE_SIZE, intervalMs: reply.intervalMs, complete: reply.complete, samples,
  });
  return { trace, reply, vcpuWrites: { fromN: reply.startN, toN: lastN } };
}

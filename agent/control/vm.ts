/**
 * The coordinator's requests about one VM's life: create, info, power on and off, suspend, pause and resume,
 * dump, destroy, and settling a migration of it left in doubt. Each asks the catalog for the VM and holds it for
 * the length of the operation.
 */
import { open } from 'node:fs/promises';
import { writesDisk } from '../../shared/workloads.js';
import { ErrorCode, FerryError } from '../../shared/errors.js';
import type { VmInfo } from '../../shared/protocol.js';
import { formatBytes } from '../../shared/units.js';
import type { Agent, ControlServer } from '../agent.js';
import { fillGuest } from '../catalog.js';
import { randomMac } from '../datastore/config.js';
import { configDriveText, makeConfigDrive } from '../datastore/config-drive.js';
import { requireCpu, resolveCpuModel } from '../vm/cpu-model.js';
import { attachNetwork, networkRefusal } from '../vm/net/attach.js';
import { attachDisk } from '../vm/disk/attach.js';
import { BLOCK_SIZE } from '../vm/disk/block-backend.js';
import { PAGE_SIZE } from '../../shared/constants.js';
import type { WorkloadSpec } from '../../shared/protocol.js';

/** Why a workload's disk writes cannot be, or undefined: they need a pattern workload and a first disk to hold them. */
export function diskWriteRefusal(name: string, workload: WorkloadSpec, diskBytes: number | undefined, keepsFiles: boolean): FerryError | undefined {
  const diskRate = workload.diskRate ?? 0;
  if (diskRate === 0 && workload.diskWssBlocks === undefined) return undefined;
  if (workload.kind !== 'pattern') {
    return new FerryError(ErrorCode.BAD_INPUT, `${name} runs ${workload.kind}: only the pattern workload writes its disk (--disk-rate, --disk-wss)`, 'use --workload pattern, or leave out --disk-rate and --disk-wss');
  }
  if (diskBytes === undefined) {
    return new FerryError(ErrorCode.BAD_INPUT, `${name} has no disk to write (--disk-rate, --disk-wss)`, 'give it one, e.g. --disk 1GiB --disk-rate 2000');
  }
  if (!keepsFiles) return new FerryError(ErrorCode.VM_STATE, `${name}'s disk writes need a disk image, and this agent keeps no files`, 'run the agent with --datastore');
  const blocks = Math.floor(diskBytes / BLOCK_SIZE);
  if (workload.diskWssBlocks !== undefined && workload.diskWssBlocks > blocks) {
    return new FerryError(ErrorCode.BAD_INPUT, `${name}'s disk working set (${workload.diskWssBlocks} blocks) is larger than its disk (${blocks} blocks of 4 KiB)`, 'give --disk-wss at most --disk');
  }
  return undefined;
}

const ZEROS = Buffer.alloc(1024 * 1024);

function isZero(data: Buffer): boolean {
  return data.equals(ZEROS.subarray(0, data.length));
}

/** Dump chunks: 1 MiB, the size ws moves at full speed. */
const DUMP_CHUNK_BYTES = 1024 * 1024;

export function serveVmControl(connection: ControlServer, agent: Agent): void {
  const { catalog, log } = agent;

  connection.handle('vm.create', async ({ name, memoryBytes, workload, prealloc, diskBytes, network, leaseUntil, cpuModel: requested, image, configDrive }) => {
    const { files } = agent;
    agent.requireOpen('new VMs', name);
    if ((image !== undefined || configDrive !== undefined) && !files) {
      throw new FerryError(ErrorCode.VM_STATE, `${agent.name} keeps no files: no images, no config drives`, 'run the agent with --datastore');
    }
    const refusal = networkRefusal(agent.addressMode, name, memoryBytes / PAGE_SIZE, workload, network);
    if (refusal) throw refusal;
    const manifestBytes = image !== undefined && files ? (await files.images.get(image, agent.name)).bytes : undefined;
    const diskRefusal = diskWriteRefusal(name, workload, manifestBytes !== undefined ? Math.max(diskBytes ?? 0, manifestBytes) : diskBytes, files !== undefined);
    if (diskRefusal) throw diskRefusal;
    // Two sockets on one address would both bind (SO_REUSEADDR) and one VM would take the other's traffic.
    const holder = network && catalog.machines().find((machine) => machine.network?.ip === network.ip && machine.address !== null);
    if (holder) throw new FerryError(ErrorCode.BAD_INPUT, `${network!.ip} is already served on ${agent.name} by ${holder.name}`, 'pick another address, or provision with --ip auto');
    const cpuModel = resolveCpuModel(requested, agent.hostCpu);
    requireCpu(agent.name, agent.hostCpu, { name, cpu: cpuModel }, 'create');
    // The image is looked up before any memory is taken: a host without it refuses at once.
    const manifest = image !== undefined ? await files!.images.get(image, agent.name) : undefined;
    if (manifest && diskBytes !== undefined && diskBytes < manifest.bytes) {
      throw new FerryError(ErrorCode.BAD_INPUT, `a disk of ${formatBytes(diskBytes)} cannot hold image ${manifest.name} (${formatBytes(manifest.bytes)})`, 'give a disk at least as large as the image, or none (the disk is then the image\'s size)');
    }
    const fullNetwork = network ? { ...network, mac: randomMac() } : null;
    // Made before the VM, so that its guest reads it when it boots.
    const drive = configDrive ? configDriveText(makeConfigDrive(name, fullNetwork, configDrive.userData)) : undefined;
    const diskSize = manifest ? Math.max(diskBytes ?? 0, manifest.bytes) : diskBytes;
    await catalog.allocate({ name, memoryBytes, workload, configDrive: drive }, 'paused', 'be created', {
      prealloc: prealloc ?? false,
      // Under the name's claim: nothing can act on the VM until its files exist and its vCPU runs.
      setup: async (vm) => {
        vm.cpuModel = cpuModel;
        if (diskSize) vm.disks = [{ file: 'disk0.img', sizeBytes: diskSize, ...(files?.shared ? { shared: true } : {}) }];
        vm.network = fullNetwork;
        await fillGuest(vm);
        if (leaseUntil) vm.leaseUntil = leaseUntil;
        await files?.makeFolder(name);
        try {
          let cloned = '';
          if (manifest) {
            const clone = await files!.cloneImage(manifest, name, vm.disks[0]!);
            vm.image = { name: manifest.name, xxh64: manifest.xxh64, cloneMethod: clone.method, cloneMs: clone.durationMs };
            cloned = `, disk0.img cloned from image ${manifest.name} (${clone.method}${clone.reflinkRefused ? `: no reflink here, ${clone.reflinkRefused}` : ''}, ${Math.round(clone.durationMs)} ms)`;
            log.info('image cloned', { vm: name, image: manifest.name, method: clone.method, durationMs: clone.durationMs, ...(clone.reflinkRefused ? { reflinkRefused: clone.reflinkRefused } : {}) });
          }
          await files?.fill(agent.configOf(vm), undefined, '', drive);
          await attachNetwork(vm, { mode: agent.addressMode, log, fresh: true });
          await attachDisk(vm, files, log);
          await agent.logEvent(name, `created on ${agent.name}: ${memoryBytes} bytes of memory, ${workload.kind} workload${diskSize ? `, disk0.img of ${diskSize} bytes` : ''}${cloned}${vm.network ? `, ${vm.network.ip}/${vm.network.prefix} (${vm.network.mac})` : ''}${leaseUntil ? `, leased until ${leaseUntil}` : ''}, cpu ${cpuModel.model} (${cpuModel.flags.length} flags)${drive ? ', config drive cidata.json' : ''}`);
          await vm.resume();
        } catch (error) {
          // The folder was made by this request (makeFolder refuses one already there): it goes with it.
          await files?.remove(name).catch((cleanup: unknown) => log.warn('could not remove the files of a VM whose creation failed', { vm: name, error: String(cleanup) }));
          throw error;
        }
        vm.state = 'running';
        await agent.logEvent(name, 'started');
      },
    });
    log.info('vm created', { vm: name, memoryBytes, workload: workload.kind });
    return agent.vmInfo(name);
  });

  connection.handle('vm.info', async ({ name }) => {
    catalog.require(name);
    return agent.vmInfo(name);
  });

  connection.handle('vm.start', async ({ name }) => {
    // A suspended guest resumes using the flags it was saved with; a named model boots with its own flags; a `host`
    // VM boots fresh with this host's, whatever host it started on before (it may have moved cold since).
    const found = catalog.findStored(name);
    if (found?.suspended) requireCpu(agent.name, agent.hostCpu, { name, cpu: found.config.cpuModel }, 'resume');
    else if (found && found.config.cpuModel.model !== 'host') requireCpu(agent.name, agent.hostCpu, { name, cpu: found.config.cpuModel }, 'start');
    // A fresh boot reads the config drive; a suspended guest read it when it first booted, and keeps what it took.
    const configDrive = found && !found.suspended ? await agent.files?.readConfigDriveText(name) : undefined;
    await catalog.powerOn(name, async (vm, { suspended, config }) => {
      if (suspended && agent.files) {
        // Exactly where it was: memory and registers as saved (checked against their digest). The image goes before
        // the vCPU runs: a crash from here on finds the VM powered off, never a stale image to rewind it to.
        const saved = await agent.files.loadSuspend(name, vm.memory);
        vm.setRegisters(saved.registers);
        vm.guest = saved.guest;
        await agent.files.dropSuspend(name);
      }
      // A fresh boot starts memory over but writes on where the disk was left (config.json's diskRegisters).
      if (!suspended && vm.diskRegisters) vm.setRegisters({ ...vm.registers(), ...vm.diskRegisters });
      if (!suspended) await fillGuest(vm);
      // Its device: made afresh at a fresh boot, found in the saved memory of a suspended guest.
      await attachNetwork(vm, { mode: agent.addressMode, log, fresh: !suspended });
      await attachDisk(vm, agent.files, log);
      let newFlags = false;
      if (!suspended && config.cpuModel.model === 'host') {
        vm.cpuModel = { model: 'host', flags: [...agent.hostCpu.flags] };
        newFlags = vm.cpuModel.flags.join(' ') !== config.cpuModel.flags.join(' ');
        if (newFlags) await agent.files?.writeConfig(agent.configOf(vm));
      }
      await vm.resume();
      vm.state = 'running';
      await agent.logEvent(name, suspended ? 'resumed from suspend' : `started (powered on)${newFlags ? `, cpu host: ${agent.name}'s ${vm.cpuModel.flags.length} flags` : ''}`);
    }, { configDrive });
    return agent.vmInfo(name);
  });

  connection.handle('vm.stop', async ({ name }) => catalog.exclusive(name, 'stop', async (vm) => {
    // The disk outlives the power-off: its registers are kept so the next boot writes on from them.
    if (vm.disk0 && writesDisk(vm.workload)) {
      if (vm.vcpuRunning) await vm.pause();
      const { y, m } = vm.registers();
      vm.diskRegisters = { y, m };
      await agent.files?.writeConfig(agent.configOf(vm));
    }
    await catalog.powerOff(vm, { config: agent.configOf(vm), suspended: false });
    await agent.logEvent(name, 'stopped (powered off; memory discarded)');
    return agent.vmInfo(name);
  }));

  connection.handle('vm.suspend', async ({ name }) => catalog.exclusive(name, 'suspend', async (vm) => {
    if (!agent.files) throw new FerryError(ErrorCode.VM_STATE, `${agent.name} has no datastore to suspend ${name} to`, 'run the agent with --datastore');
    const wasRunning = vm.state === 'running';
    if (wasRunning) await vm.pause();
    // The image is written while the agent could still be filling the RX ring: leave the rings alone first, so the
    // saved image holds them whole (what arrives from now on is dropped with the VM's address; clients retry).
    vm.net?.hold();
    const registers = vm.registers();
    try {
      await agent.files.saveSuspend(name, vm.memory, registers, vm.guest);
    } catch (error) {
      vm.net?.serve();
      if (wasRunning) await vm.resume();
      throw error;
    }
    await catalog.powerOff(vm, { config: agent.configOf(vm), suspended: true, registers });
    await agent.logEvent(name, `suspended to disk at n=${registers.n}`);
    return agent.vmInfo(name);
  }));

  connection.handle('vm.pause', async ({ name }) => catalog.exclusive(name, 'pause', async (vm) => {
    if (vm.state === 'running') {
      await vm.pause();
      vm.state = 'paused';
      await agent.logEvent(name, 'paused');
    }
    return agent.vmInfo(name);
  }));

  connection.handle('vm.resume', async ({ name }) => catalog.exclusive(name, 'resume', async (vm) => {
    if (vm.state === 'paused') {
      await vm.resume();
      vm.state = 'running';
      await agent.logEvent(name, 'resumed');
    }
    return agent.vmInfo(name);
  }));

  connection.handle('vm.destroy', async ({ name, deleteDisks }) => {
    const askDisks = (disks: { file: string }[]): void => {
      if (disks.length > 0 && !deleteDisks) {
        throw new FerryError(ErrorCode.BAD_INPUT, `destroying ${name} would delete its disks (${disks.map((disk) => disk.file).join(', ')})`, `add --yes to delete them: \`ferry vm destroy ${name} --yes\``);
      }
    };
    if (catalog.findStored(name)) {
      await catalog.holdStored(name, 'destroy', async (stored) => {
        askDisks(stored.config.disks);
        await agent.files?.remove(name, true);
        catalog.forgetStored(name);
      });
    } else {
      await catalog.exclusive(name, 'destroy', async (vm) => {
        askDisks(vm.disks);
        // Files first, then the name: nothing created under the name meanwhile can lose its files to this.
        await agent.files?.remove(name, true);
        await catalog.release(vm);
      });
    }
    log.info('vm destroyed', { vm: name });
    return {};
  });

  connection.handle('vm.dump', async ({ name }, context) => catalog.exclusive(name, 'dump', async (vm) => {
    const wasRunning = vm.state === 'running';
    if (wasRunning) await vm.pause();
    vm.state = 'paused';
    try {
      const info: VmInfo = vm.info(agent.name);
      for (let offset = 0; offset < vm.memoryBytes && !context.signal.aborted; offset += DUMP_CHUNK_BYTES) {
        const length = Math.min(DUMP_CHUNK_BYTES, vm.memoryBytes - offset);
        await context.event({ offset, data: Buffer.from(vm.memory.buffer, offset, length) });
      }
      return { info, wasRunning };
    } finally {
      if (wasRunning) {
        await vm.resume();
        vm.state = 'running';
      }
    }
  }));

  connection.handle('vm.disk-dump', async ({ name }, context) => catalog.exclusive(name, 'disk dump', async (vm) => {
    const disk = vm.disk0;
    if (!disk) throw new FerryError(ErrorCode.VM_STATE, `${name} has no disk served on ${agent.name}`, 'only a running or paused VM with a disk (--disk) has one to read');
    const wasRunning = vm.state === 'running';
    // Paused, a guest has no disk write in flight (disk/mailbox.ts): the image and registers y, m agree.
    if (wasRunning) await vm.pause();
    vm.state = 'paused';
    const sizeBytes = disk.blockCount * BLOCK_SIZE;
    let bytesSent = 0;
    const handle = await open(disk.file, 'r');
    try {
      const info: VmInfo = vm.info(agent.name);
      await context.event({ info, sizeBytes }); // first: the registers the image is checked against
      const chunk = Buffer.alloc(DUMP_CHUNK_BYTES);
      for (let offset = 0; offset < sizeBytes && !context.signal.aborted; offset += DUMP_CHUNK_BYTES) {
        const length = Math.min(DUMP_CHUNK_BYTES, sizeBytes - offset);
        const { bytesRead } = await handle.read(chunk, 0, length, offset);
        chunk.fill(0, bytesRead, length); // past the end of a short file: zeros, as a sparse tail reads
        const data = chunk.subarray(0, length);
        if (isZero(data)) continue; // a hole, or zeros: the reader takes what does not arrive as zeros
        await context.event({ offset, data: Buffer.from(data) });
        bytesSent += length;
      }
      return { info, wasRunning, sizeBytes, bytesSent };
    } finally {
      await handle.close();
      if (wasRunning) {
        await vm.resume();
        vm.state = 'running';
      }
    }
  }));

  connection.handle('vm.resolve', async ({ name }) => {
    const stateNow = (): string => {
      const stored = catalog.findStored(name);
      return catalog.findMachine(name)?.state ?? (stored ? (stored.suspended ? 'suspended' : 'defined') : 'gone');
    };
    if (agent.settlements.inDoubt.has(name)) {
      const detail = await agent.settlements.settleSource(name);
      return { state: stateNow(), detail };
    }
    const parked = [...agent.incoming.values()].find((target) => target.vm.name === name && target.state === 'verified');
    if (parked) {
      const detail = await agent.settlements.settleParked(parked);
      return { state: stateNow(), detail };
    }
    catalog.require(name);
    return { state: stateNow(), detail: 'nothing in doubt here' };
  });
}

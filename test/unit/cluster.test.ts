import { describe, expect, it } from 'vitest';
import { addHost, removeHost, type Cluster } from '../../coordinator/cluster.js';

function clusterWithEverything(): Cluster {
  return {
    tokenFile: 'ferry.token',
    network: { pool: '10.0.0.10-10.0.0.250', prefix: 24, gateway: '10.0.0.1' },
    hosts: [{ name: 'host-a', url: 'ws://127.0.0.1:7001' }],
  };
}

describe('cluster file edits', () => {
  it('adding a host keeps the address pool and the token file', () => {
    const edited = addHost(clusterWithEverything(), { name: 'host-b', url: 'ws://127.0.0.1:7002' });
    expect(edited).toEqual({ ...clusterWithEverything(), hosts: [...clusterWithEverything().hosts, { name: 'host-b', url: 'ws://127.0.0.1:7002' }] });
  });

  it('removing a host keeps the address pool and the token file', () => {
    const edited = removeHost(clusterWithEverything(), 'host-a');
    expect(edited).toEqual({ ...clusterWithEverything(), hosts: [] });
  });

  it('never changes the cluster it was given', () => {
    const original = clusterWithEverything();
    addHost(original, { name: 'host-b', url: 'ws://127.0.0.1:7002' });
    removeHost(original, 'host-a');
    expect(original).toEqual(clusterWithEverything());
  });
});

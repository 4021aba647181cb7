/** How long the process may take to exit by itself once every suite has run. */
const EXIT_WITHIN_MS = 15_000;

/**
 * Jest's globalTeardown. With --runInBand the suites run in this very process, so a handle one of them
 * left open (a socket, a timer, a child process) keeps jest alive for ever after the run — and CI with it.
 * Instead, the run ends red, naming what was still open. Suites are kept --detectOpenHandles-clean, so this
 * never fires in a good run; unlike --forceExit, it does not hide a leak but fails on it.
 */
export default function exitBound(globalConfig: { watch: boolean; watchAll: boolean }): void {
  if (globalConfig.watch || globalConfig.watchAll) return;
  setTimeout(() => {
    const open = process.getActiveResourcesInfo().filter((kind) => kind !== 'TTYWrap');
    process.stderr.write(
      `\nJest did not exit within ${EXIT_WITHIN_MS / 1000} s of the end of the run; still open: ${open.join(', ') || 'nothing listed'}.\n` +
        'A suite leaves a handle open: `npx jest --runInBand --detectOpenHandles <file>` shows where it was opened. Ending the run as failed.\n',
    );
    process.exit(1);
  }, EXIT_WITHIN_MS).unref();
}

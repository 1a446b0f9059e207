// The error-rate check as a plain script: the subprocess baseline the
// language benchmark (tests/benches/gate_languages.rs) compares the
// component with. `node baseline.js URL [MAX_RATE]`; exit 0 pass, 1 fail.

const [url, maxArg] = process.argv.slice(2);
const maxRate = maxArg === undefined ? 0.01 : Number(maxArg);
const response = await fetch(url, { signal: AbortSignal.timeout(5000) });
const body = await response.json();
const requests = Math.trunc(Number(body.requests));
const errors = Math.trunc(Number(body.errors));
const rate = requests ? errors / requests : 0;
const passed = rate <= maxRate;
console.log(JSON.stringify({ decision: passed ? 'pass' : 'fail', error_rate: rate.toFixed(4) }));
process.exit(passed ? 0 : 1);

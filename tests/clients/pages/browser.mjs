// The shared part of the page tests (tests/e2e/web/*.rs): Debian's
// Chromium through playwright-core, and a page that records what the
// browser complained about.
import { chromium } from 'playwright-core';

/** Launches Debian's Chromium, headless. */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required'],
  });
}

/**
 * Opens `url` in a fresh context (its own storage) with `viewport`, and
 * collects the page's console errors, uncaught exceptions, dialogs
 * (an `alert` from injected markup would show here) and CSP violations.
 */
export async function open(browser, url, { viewport = { width: 1280, height: 720 }, mobile = false } = {}) {
  const context = await browser.newContext({ viewport, isMobile: mobile, hasTouch: mobile });
  const page = await context.newPage();
  const problems = { errors: [], dialogs: [], csp: [] };
  page.on('pageerror', (e) => problems.errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') {
      const text = m.text();
      (text.includes('Content Security Policy') ? problems.csp : problems.errors).push(text);
    }
  });
  page.on('dialog', async (d) => {
    problems.dialogs.push(d.message());
    await d.dismiss();
  });
  await page.goto(url);
  return { context, page, problems };
}

/** Prints the test's one JSON report and exits. */
export function report(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
  process.exit(0);
}

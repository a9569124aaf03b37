// Screenshot of Label Studio's labelling screen in headless Chromium (playwright-core, not committed:
// `npm install playwright-core` in a scratch folder, then NODE_PATH=<it>/node_modules).
// node label_studio_screenshot.cjs URL EMAIL PASSWORD PAGE_PATH OUT.png
const { chromium } = require("playwright-core");
(async () => {
  const [url, email, password, page_path, out] = process.argv.slice(2);
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.route(u => !u.toString().startsWith(url), r => r.abort());  // nothing beyond the local server
  await page.goto(url + "/user/login");
  await page.fill("input[name=email]", email);
  await page.fill("input[name=password]", password);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit], input[type=submit]")]);
  await page.goto(url + page_path);
  await page.waitForSelector("img", { timeout: 60000 });
  await page.waitForTimeout(4000);
  await page.screenshot({ path: out });
  await browser.close();
})().catch(e => { console.error(e); process.exit(1); });

-- Argo CD health check for slipway.dev/v1alpha1 ModelDeployment.
-- Reads the kstatus-style status the Slipway operator writes. Order of checks:
-- observed generation, then Stalled, then Ready, then Reconciling. The operator never sets
-- Stalled and Reconciling True together, so kstatus (which reads them in list order) and this
-- check give the same verdict: Stalled is Failed/Degraded, with the same message.
-- Runs in gopher-lua (Lua 5.1, as embedded in Argo CD) and in Lua 5.4, with or without
-- useOpenLibs: Argo CD opens only the base, table, package and a safe os library for health
-- checks from argocd-cm, so this uses no string or math library and no string methods.
local hs = {}

local DIGITS = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}

-- A whole number as digits. Argo CD hands every number over as a float: gopher-lua prints 3.0
-- as "3", Lua 5.4 as "3.0", and string.format is not there to choose.
local function num(value)
  local n = tonumber(value)
  if n == nil then
    return tostring(value)
  end
  if n < 0 or n ~= n or n >= 1e15 or n % 1 ~= 0 then
    return tostring(n)
  end
  local last = n % 10
  if n < 10 then
    return DIGITS[last + 1]
  end
  return num((n - last) / 10) .. DIGITS[last + 1]
end

local function text(value)
  if value == nil then
    return ""
  end
  return tostring(value)
end

local function condition(conditions, kind)
  if type(conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(conditions) do
    if type(c) == "table" and c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

-- The condition's message, or its reason when the message is empty.
local function say(c, fallback)
  if c ~= nil then
    if text(c.message) ~= "" then
      return text(c.message)
    end
    if text(c.reason) ~= "" then
      return text(c.reason)
    end
  end
  return fallback
end

local generation = nil
if obj.metadata ~= nil then
  generation = tonumber(obj.metadata.generation)
end
local status = obj.status

local function waiting()
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the Slipway operator to observe generation " .. num(generation)
  else
    hs.message = "Waiting for the Slipway operator to observe the resource"
  end
  return hs
end

if type(status) ~= "table" then
  return waiting()
end
local observed = tonumber(status.observedGeneration)
if observed == nil or (generation ~= nil and observed < generation) then
  return waiting()
end

local conditions = status.conditions
local phase = text(status.phase)

-- Stalled: the spec's revision failed and will not be retried by itself. The message says what
-- failed and what serves instead (a revert under way, or done).
local stalled = condition(conditions, "Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = say(stalled, "Stalled")
  return hs
end

local ready = condition(conditions, "Ready")
local ready_stale = false
if is_true(ready) and ready.observedGeneration ~= nil and generation ~= nil then
  local ready_generation = tonumber(ready.observedGeneration)
  ready_stale = ready_generation == nil or ready_generation ~= generation
end
if is_true(ready) and not ready_stale then
  hs.status = "Healthy"
  hs.message = say(ready, "Ready")
  return hs
end

local reconciling = condition(conditions, "Reconciling")
if is_true(reconciling) then
  local message = say(reconciling, "reconciling")
  if phase ~= "" then
    message = phase .. ": " .. message
  end
  hs.status = "Progressing"
  hs.message = message
  return hs
end

hs.status = "Progressing"
if ready_stale then
  hs.message = "Waiting for the Ready condition to reflect generation " .. num(generation) ..
    " (it is for generation " .. num(ready.observedGeneration) .. ")"
  return hs
end
local parts = {}
if phase ~= "" then
  table.insert(parts, phase)
end
if ready ~= nil and text(ready.reason) ~= "" then
  table.insert(parts, text(ready.reason))
end
if ready ~= nil and text(ready.message) ~= "" then
  table.insert(parts, text(ready.message))
end
if #parts == 0 then
  hs.message = "Waiting for the Slipway operator to report readiness"
else
  hs.message = table.concat(parts, ": ")
end
return hs
